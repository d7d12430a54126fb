"""Checks at the door, without Keras: class_weight's keys against the source table before any worker
starts (indices of the one dependent's classes; a table with several dependents takes none, as Keras
refuses it for several outputs); and which optimizers need Keras to be checked at all."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from madlib_dl.api import model_selection
from madlib_dl.api.fit_multiple import check_class_weight
from madlib_dl.errors import InvalidArgument
from madlib_dl.keras_runtime import params


def _table(*dependents, classes=(3,)):
    return SimpleNamespace(text="t_packed", dependents=dependents, output_classes=classes, num_classes=classes[0])


def test_indices_of_the_classes_pass_and_one_past_them_is_named():
    check_class_weight(params.parse_fit_params("class_weight={0: 1.0, 2: 3.0}"), _table("y"), "fit_params")
    check_class_weight(params.parse_fit_params("epochs=2"), _table("y", "z", classes=(3, 2)), "fit_params")
    with pytest.raises(InvalidArgument, match=r"^fit_params: class_weight: class index 3 is out of range: 't_packed' "
                                              r"has 3 classes, indices 0 to 2"):
        check_class_weight(params.parse_fit_params("class_weight={3: 1.0, 7: 2.0}"), _table("y"), "fit_params")


def test_several_dependents_take_no_class_weight():
    with pytest.raises(InvalidArgument, match=r"class_weight weighs the classes of one dependent variable, and "
                                              r"'t_packed' has 2 \(y, z\)"):
        check_class_weight(params.parse_fit_params("class_weight={0: 1.0}"), _table("y", "z", classes=(3, 2)),
                           "mst_key 1: fit_params")


@pytest.mark.parametrize("optimizer, needs_keras", [
    ("Adam", False), ("SGD(lr=0.1)", False), ("RMSprop(learning_rate=1)", False),
    ("SGD(lr=0.1, momentum=0.9)", True), ("Adam(lr=0.01, decay=1)", True),  # Keras 2's decay: a schedule
    ("SGD(clipnorm=1.0)", True)])
def test_only_an_optimizer_given_more_than_a_learning_rate_imports_keras_to_be_checked(optimizer, needs_keras):
    assert model_selection._needs_keras(params.parse_optimizer(optimizer)) is needs_keras
