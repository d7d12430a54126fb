"""Table-name arguments are read with PostgreSQL's identifier rules and re-quoted."""

import pytest

from madlib_dl.errors import InvalidArgument
from madlib_dl.identifiers import TableName, parse_table_name


class Quoting:
    @staticmethod
    def quote_ident(name):
        return '"' + name.replace('"', '""') + '"'


@pytest.mark.parametrize("text, expected", [
    ("gpus", TableName(None, "gpus")),
    ("  GPUs ", TableName(None, "gpus")),
    ("Public.Gpus", TableName("public", "gpus")),
    ('"My Table"', TableName(None, "My Table")),
    ('"Sch"."a""b"', TableName("Sch", 'a"b')),
    ('s . t', TableName("s", "t")),
    ("t$1", TableName(None, "t$1")),
    ("ÜberTabelle", TableName(None, "Übertabelle")),
    ('"x; DROP TABLE y"', TableName(None, "x; DROP TABLE y")),
])
def test_names_parse_like_the_server(text, expected):
    assert parse_table_name(text, "output_table") == expected


def test_quoted_form_is_safe_sql():
    table = parse_table_name('s."x""; DROP TABLE y; --"', "output_table")
    assert table.sql(Quoting) == '"s"."x""; DROP TABLE y; --"'
    assert parse_table_name("s.t", "t").sql(Quoting) == '"s"."t"'


def test_a_name_without_schema_is_never_placed_in_sql():
    """Statements run with search_path = pg_catalog, pg_temp: a bare name must be resolved first."""
    with pytest.raises(ValueError, match="before it was resolved"):
        parse_table_name("t", "output_table").sql(Quoting)
    assert str(parse_table_name('"A".b', "t")) == "A.b"


@pytest.mark.parametrize("text, message", [
    (None, "output_table: expected a table name, got NULL"),
    ("", "got an empty string"),
    ("x; DROP TABLE y", "expected a table name such as my_table"),
    ("a.b.c", "expected table or schema.table, got 3 parts"),
    ('"unterminated', "unterminated quoted identifier"),
    ('""', "empty quoted identifier"),
    ("1abc", "expected a table name such as"),
    ("a.", "expected a table name such as"),
    ("a b", "expected a table name such as"),
    ("x" * 64, "longer than 63 bytes"),
])
def test_bad_names_are_refused_naming_the_argument(text, message):
    with pytest.raises(InvalidArgument, match="output_table") as raised:
        parse_table_name(text, "output_table")
    assert message in str(raised.value)
