"""dependent_varname / independent_varname as comma-separated lists (multi-input / multi-output packing):
pure functions, no database."""

import pytest

from madlib_dl.errors import InvalidArgument
from madlib_dl.preprocess import columns


@pytest.mark.parametrize("text,names", [
    ("attributes", ["attributes"]),
    ("  attributes ", ["attributes"]),
    ("attributes, attributes2", ["attributes", "attributes2"]),
    ("a,b ,  c", ["a", "b", "c"]),
    ('"A,B", c', ['"A,B"', "c"]),                   # a comma inside a quoted identifier
    ('"say ""hi"", ok" , x', ['"say ""hi"", ok"', "x"]),  # doubled quotes inside one
    ("s.t", ["s.t"]),                                # catalog.column refuses it, naming the argument
    (None, [None]),                                  # NULL and blank: catalog.column names the problem
    ("  ", ["  "]),
])
def test_split_list(text, names):
    assert columns.split_list(text, "independent_varname") == names


@pytest.mark.parametrize("text", ["a,,b", "a,", ",a", "a, ,b"])
def test_an_empty_element_is_refused_naming_the_argument(text):
    with pytest.raises(InvalidArgument, match=r"^dependent_varname: empty column name in the list ") as info:
        columns.split_list(text, "dependent_varname")
    assert info.value.hint == "Separate column names with single commas, e.g. 'a, b'."


def test_an_unterminated_quote_is_refused():
    with pytest.raises(InvalidArgument, match=r"^independent_varname: unterminated quoted identifier in 'a, \"b'"):
        columns.split_list('a, "b', "independent_varname")


def test_ordinal_names_a_variable_only_among_several():
    assert columns.ordinal(0, 1) == ""
    assert columns.ordinal(1, 3) == " (variable 2 of 3)"
