"""KERAS_HOME (issue 25, item 8): a predictable path under /tmp that another local user could plant
(a directory of theirs, or a symbolic link to elsewhere) with the keras.json Keras reads. madlib_dl
creates it 0700 and uses only a directory of the server's OS user that nobody else can open, never a link."""

import os
import stat
import tempfile

import pytest

from madlib_dl.errors import UnsafeEnvironment
from madlib_dl.keras_runtime import tf_setup


def test_created_private(tmp_path):
    home = tmp_path / "keras-home"
    old = os.umask(0)  # even with a permissive umask
    try:
        tf_setup.private_directory(str(home))
    finally:
        os.umask(old)
    info = os.lstat(home)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    tf_setup.private_directory(str(home))  # the one it made before is accepted


def test_a_planted_symbolic_link_is_refused_and_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    home = tmp_path / "keras-home"
    home.symlink_to(target)
    with pytest.raises(UnsafeEnvironment, match=f"^KERAS_HOME: {home} is a symbolic link; ") as refused:
        tf_setup.private_directory(str(home))
    assert f"remove {home}" in refused.value.hint
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nothing")
    with pytest.raises(UnsafeEnvironment, match="is a symbolic link"):
        tf_setup.private_directory(str(dangling))
    assert not (tmp_path / "nothing").exists()  # mkdir did not create the link's target


def test_a_directory_open_to_others_is_refused(tmp_path):
    home = tmp_path / "keras-home"
    home.mkdir()
    home.chmod(0o777)
    with pytest.raises(UnsafeEnvironment, match=r"is open to other users \(mode 0777, expected 0700\)"):
        tf_setup.private_directory(str(home))
    home.chmod(0o750)
    with pytest.raises(UnsafeEnvironment, match=r"mode 0750"):
        tf_setup.private_directory(str(home))


def test_a_file_is_refused(tmp_path):
    home = tmp_path / "keras-home"
    home.write_text("{}")
    with pytest.raises(UnsafeEnvironment, match="is not a directory"):
        tf_setup.private_directory(str(home))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_another_users_directory_is_refused(tmp_path):
    home = tmp_path / "keras-home"
    home.mkdir(mode=0o700)
    os.chown(home, 65534, 65534)
    with pytest.raises(UnsafeEnvironment, match=r"is owned by uid 65534, not by the server's OS user \(uid 0\)"):
        tf_setup.private_directory(str(home))


def test_the_environment_refuses_a_planted_keras_home(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    planted = tmp_path / f"madlib_dl-keras-{os.getuid()}"
    (tmp_path / "attacker").mkdir()
    planted.symlink_to(tmp_path / "attacker")
    with pytest.raises(UnsafeEnvironment):
        tf_setup._environment()
    assert "KERAS_HOME" not in os.environ
    planted.unlink()
    tf_setup._environment()
    assert os.environ["KERAS_HOME"] == str(planted) and stat.S_IMODE(os.lstat(planted).st_mode) == 0o700
