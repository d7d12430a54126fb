"""callbacks in fit_params: MADlib's TensorBoard form parsed (never evaluated), the callbacks that cannot act
per hop refused with their reason, and bad arguments named."""

from __future__ import annotations

import pytest

from madlib_dl.errors import InvalidArgument, NotSupported
from madlib_dl.keras_runtime import callbacks
from madlib_dl.keras_runtime.callbacks import TensorBoardSpec
from madlib_dl.keras_runtime.params import parse_fit_params


def test_madlibs_tensorboard_form():
    parsed = parse_fit_params("batch_size=2, epochs=1, callbacks=[TensorBoard(log_dir='/tmp/tensorflow/single/')]")
    assert parsed.callbacks == (TensorBoardSpec("/tmp/tensorflow/single/"),)
    assert "callbacks" not in parsed.keras_kwargs()  # written by the runtime, never handed to Keras


def test_arguments_and_qualified_names():
    (spec,) = callbacks.parse("[keras.callbacks.TensorBoard(log_dir='/tb', histogram_freq=2, write_graph=False, "
                              "update_freq='epoch')]", "fit_params: callbacks")
    assert spec == TensorBoardSpec("/tb", histogram_freq=2, write_graph=False)
    assert callbacks.parse("[]", "x") == ()


def test_equal_callbacks_make_equal_fit_params():
    assert parse_fit_params("callbacks=[TensorBoard(log_dir='/tb')]") == \
        parse_fit_params("callbacks = [ TensorBoard( log_dir = '/tb' ) ]")


@pytest.mark.parametrize("name", sorted(callbacks.REFUSED))
def test_each_refused_callback_says_why(name):
    with pytest.raises(NotSupported, match=rf"^fit_params: callbacks: {name} cannot act per hop: \w"):
        parse_fit_params(f"callbacks=[{name}()]")


@pytest.mark.parametrize("text, fragment", [
    ("TensorBoard(log_dir='/tb')", "expected a list of callbacks such as"),
    ("[TensorBoard]", "expected calls such as"),
    ("[Evil(log_dir='/tb')]", "unknown callback 'Evil'; TensorBoard is the one accepted"),
    ("[TensorBoard()]", "TensorBoard needs log_dir"),
    ("[TensorBoard('/tb')]", "as name=value"),
    ("[TensorBoard(log_dir='relative/dir')]", "log_dir must be an absolute path"),
    ("[TensorBoard(log_dir=__import__('os').getcwd())]", "log_dir must be a literal value"),
    ("[TensorBoard(log_dir='/tb', profile_batch=2)]", "argument 'profile_batch' is not accepted"),
    ("[TensorBoard(log_dir='/tb', **kw)]", "argument '**' is not accepted"),
    ("[TensorBoard(log_dir='/tb', histogram_freq=-1)]", "histogram_freq must be >= 0"),
    ("[TensorBoard(log_dir='/tb', histogram_freq='1')]", "histogram_freq must be int"),
    ("[TensorBoard(log_dir='/tb') TensorBoard(log_dir='/x')]", "expected a list of callbacks"),
])
def test_bad_callbacks_are_named(text, fragment):
    with pytest.raises(InvalidArgument, match="^fit_params: callbacks: .*" + fragment.replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[").replace("*", r"\*")):
        parse_fit_params(f"callbacks={text}")


def test_update_freq_other_than_epoch_is_not_supported():
    with pytest.raises(NotSupported, match="update_freq must be 'epoch'"):
        parse_fit_params("callbacks=[TensorBoard(log_dir='/tb', update_freq='batch')]")
