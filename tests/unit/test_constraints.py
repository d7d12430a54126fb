"""constraints.txt pins what requirements*.txt do not, and the venv holds exactly those versions."""

from madlib_dl.tools import constraints, paths


def test_names_are_compared_as_pip_compares_them():
    assert constraints.canonical("tensorflow_cpu") == constraints.canonical("TensorFlow-CPU") == "tensorflow-cpu"
    assert constraints.pins("# c\nml_dtypes==0.6.0  # why\n-e git+x#egg=y\nrequests>=2\n") == {
        "ml-dtypes": "ml_dtypes==0.6.0"}


def test_the_constraints_leave_out_the_direct_pins_and_madlib_dl():
    frozen = "absl-py==2.5.1\nmadlib_dl==0.2.0\ntensorflow_cpu==2.21.0\nml_dtypes==0.6.0\n"
    text = constraints.render(frozen, {"tensorflow-cpu": "tensorflow-cpu==2.21.0"})
    assert text.startswith(constraints.HEADER)
    assert text[len(constraints.HEADER):] == "absl-py==2.5.1\nml_dtypes==0.6.0\n"


def test_the_venv_holds_the_pinned_versions_and_nothing_unpinned():
    """A venv made from the pins (src/setup.sh) has exactly them: nothing left to the index's newest."""
    direct = constraints.direct_pins()
    pinned = constraints.pins((paths.REPO / constraints.CONSTRAINTS).read_text())
    assert not set(direct) & set(pinned)
    venv = constraints.pins(constraints.venv_freeze())
    venv.pop("madlib-dl", None)
    assert {name: line.split("==")[1] for name, line in venv.items()} == \
        {name: line.split("==")[1] for name, line in {**direct, **pinned}.items()}
