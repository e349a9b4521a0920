"""manifest.json next to the shards: missing is normal, corrupt is an error, any label-mode spelling."""

import pytest

from remedis_tf.data.manifest import read_manifest
from remedis_tf.errors import InputDataError, UserError
from tfrecords_tools.schema import LabelMode


def test_missing_manifest_is_none(tmp_path):
  assert read_manifest(str(tmp_path / "*.tfrecord")) is None


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"label_mode": "binary"}'])
def test_corrupt_manifest_is_an_error_naming_the_file(tmp_path, text):
  """A corrupt manifest used to mean 'multi-class' silently; now it stops the run."""
  (tmp_path / "manifest.json").write_text(text)
  with pytest.raises(InputDataError, match="manifest.json") as info:
    read_manifest(str(tmp_path / "*.tfrecord"))
  assert isinstance(info.value, UserError)


@pytest.mark.parametrize("spelling", ["multi_class", "multiclass", "Multi-Class"])
def test_label_mode_spellings_read_as_one_enum(tmp_path, spelling):
  (tmp_path / "manifest.json").write_text(f'{{"label_mode": "{spelling}", "label_names": ["a"]}}')
  for files in ([str(tmp_path / "x.tfrecord")], str(tmp_path), str(tmp_path / "*.tfrecord")):
    manifest = read_manifest(files)
    assert manifest["label_mode"] is LabelMode.MULTI_CLASS
    assert manifest["label_names"] == ["a"]
