"""madlib_dl.api.predict's pure helpers for models of several inputs and outputs (multi-io): the column
list of independent_varname, byom's class_values and dependent_count, and Keras' outputs read back. No
database, no Keras."""

import numpy as np
import pytest

from madlib_dl.api import predict
from madlib_dl.errors import InvalidArgument, NotSupported

ARG = "model_arch_table (model_id 1)"


def test_given_outputs_one_output_as_before():
    (output,) = predict._given_outputs(["a", "b", "c"], (3,))
    assert output == predict.Output("dependent_var", ("a", "b", "c"))
    (output,) = predict._given_outputs(None, (2,))
    assert output == predict.Output("dependent_var", ("0", "1"))


def test_given_outputs_one_row_per_output_padded():
    outputs = predict._given_outputs([["a", "b", "c"], ["x", "y", None]], (3, 2))
    assert outputs == [predict.Output("dependent_var_0", ("a", "b", "c")),
                       predict.Output("dependent_var_1", ("x", "y"))]
    outputs = predict._given_outputs([["a", "b", "c"], [None, None, None]], (3, 2))
    assert outputs[1] == predict.Output("dependent_var_1", ("0", "1"))


def test_given_outputs_one_list_for_every_output_or_none():
    assert predict._given_outputs(["p", "q"], (2, 2)) == [predict.Output("dependent_var_0", ("p", "q")),
                                                          predict.Output("dependent_var_1", ("p", "q"))]
    assert predict._given_outputs(None, (3, 2))[1] == predict.Output("dependent_var_1", ("0", "1"))


@pytest.mark.parametrize("values, counts, fragment", [
    (["a", "b", "c"], (3, 2), "one list of 3 values, but the model's 2 outputs have 3, 2 classes"),
    ([["a", "b", "c"]], (3, 2), "has 1 rows, one per dependent variable, but the model has 2 outputs"),
    ([["a", "b", "c"], ["x", "y", "z"]], (3, 2), "row 2 has 3 values but the model's output 2 has 2 classes"),
    ([["a", "b"], ["x", "y"]], (3,), "has 2 rows, one per dependent variable, but dependent_count is 1"),
    ([[["a"]]], (1, 1), "got 3 dimensions"),
])
def test_given_outputs_refused_naming_class_values(values, counts, fragment):
    with pytest.raises(InvalidArgument) as error:
        predict._given_outputs(values, counts)
    assert str(error.value).startswith("class_values: ") and fragment in str(error.value)


def test_dependent_count():
    for value, outputs in ((None, 1), (1, 1), (1, 2), (2, 2), (None, 3), (3, 3)):
        predict._dependent_count(value, outputs, ARG)
    with pytest.raises(NotSupported, match="dependent_count: several outputs are not supported"):
        predict._dependent_count(2, 1, ARG)
    with pytest.raises(InvalidArgument, match=r"dependent_count: expected 1 \(the model's one output\), got 0"):
        predict._dependent_count(0, 1, ARG)
    with pytest.raises(InvalidArgument, match=r"dependent_count: expected 2 \(the model's 2 outputs\) or 1, got 3"):
        predict._dependent_count(3, 2, ARG)


def _model(*outputs):
    first, *more = outputs
    return predict.Model("{}", b"", ARG, first.class_name, first.class_values, 1.0, (4,), ((2, 2),), tuple(more))


def test_model_first_input_and_output_and_the_others():
    model = _model(predict.Output("y", ("a", "b")), predict.Output("z", ("0", "1", "2")))
    assert model.input_shapes == ((4,), (2, 2))
    assert [o.class_name for o in model.outputs] == ["y", "z"]
    single = predict.Model("{}", b"", ARG, "y", ("a",), 1.0, (4,))  # positional, as before multi-io
    assert single.input_shapes == ((4,),) and single.outputs == (predict.Output("y", ("a",)),)


def test_probabilities_one_matrix_per_output():
    model = _model(predict.Output("y", ("a", "b")), predict.Output("z", ("0", "1", "2")))
    got = predict._probabilities([np.ones((5, 2), np.float32), np.zeros((5, 3), np.float32)], model, 5)
    assert [p.shape for p in got] == [(5, 2), (5, 3)] and all(p.dtype == np.float64 for p in got)
    one = predict.Model("{}", b"", ARG, "y", ("a", "b"), 1.0, (4,))
    assert predict._probabilities(np.ones((5, 2), np.float32), one, 5)[0].shape == (5, 2)
    with pytest.raises(InvalidArgument, match="predicted 2 outputs of 3, 2 classes; its architecture says 2, 3"):
        predict._probabilities([np.ones((5, 3)), np.zeros((5, 2))], model, 5)
