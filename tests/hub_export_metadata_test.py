"""Export metadata, release names and the model card."""

import json

import pytest

from hub_export import embed, metadata, model_card


@pytest.mark.parametrize(
  "name, expected",
  [
    ("cxr-50x1-remedis-m", ("cxr", 50, 1, "m")),
    ("path-152x2-remedis-s", ("path", 152, 2, "s")),
  ],
)
def test_parse_release_name(name, expected):
  parts = metadata.parse_release_name(name)
  assert (parts["modality_key"], parts["depth"], parts["width"], parts["upstream_key"]) == expected
  assert metadata.release_name(*expected) == name


@pytest.mark.parametrize(
  "name", ["cxr-50x1-remedis", "ct-50x1-remedis-m", "my-model", "cxr-50x1-simclr-m"]
)
def test_non_release_names(name):
  assert metadata.parse_release_name(name) is None


def test_release_name_rejects_bad_parts():
  with pytest.raises(ValueError):
    metadata.release_name("ct", 50, 1, "m")


def test_metadata_for_release_name_fills_fields():
  meta = metadata.metadata_for("cxr-152x2-remedis-m", feature_dim=4096)
  assert (meta.depth, meta.width, meta.pretrain_image_size) == (152, 2, 448)
  assert meta.modality == "chest X-ray"
  assert "ImageNet-21k" in meta.upstream
  assert meta.architecture == "BiT ResNetV2-152x2"
  path = metadata.metadata_for("path-50x1-remedis-s", feature_dim=2048)
  assert path.pretrain_image_size == 224 and "ImageNet-1k" in path.upstream


def test_metadata_for_model_values_and_overrides_win():
  meta = metadata.metadata_for(
    "cxr-50x1-remedis-m", feature_dim=2048, depth=14, width=1, training_data="synthetic"
  )
  assert meta.depth == 14 and meta.training_data == "synthetic"
  custom = metadata.metadata_for("my-encoder", feature_dim=6144)
  assert custom.width == 3 and custom.depth == 0 and custom.modality == "unspecified"


def test_json_round_trip_and_unknown_keys():
  meta = metadata.metadata_for(
    "path-50x1-remedis-s", 2048, label_names=("benign", "tumour"), label_mode="multiclass"
  )
  text = meta.to_json()
  data = json.loads(text)
  assert data["label_names"] == ["benign", "tumour"]
  assert "tensorflow" in data["software_version"] and "remedis-tf" in data["software_version"]
  assert metadata.ExportMetadata.from_json(text) == meta
  data["future_field"] = 1
  del data["objective"]
  parsed = metadata.ExportMetadata.from_json(json.dumps(data))
  assert parsed.objective == metadata.ExportMetadata().objective


def test_model_card_is_filled():
  meta = metadata.metadata_for("cxr-50x1-remedis-m", 2048, training_data="Synthetic radiographs.")
  card = model_card.render_model_card(meta)
  assert card.startswith("# Model card: cxr-50x1-remedis-m")
  for value in ("BiT ResNetV2-50x1", "448 px", "chest X-ray", "Synthetic radiographs.", "SimCLR"):
    assert value in card
  assert "## Classifier" not in card
  with_labels = model_card.render_model_card(
    meta.replace(label_names=("a", "b"), label_mode="multilabel")
  )
  assert (
    "## Classifier" in with_labels and "`a`, `b`" in with_labels and "multilabel" in with_labels
  )


def test_default_image_size(tmp_path):
  assert embed.default_image_size(str(tmp_path / "cxr-50x1-remedis-m")) == 448
  assert embed.default_image_size(str(tmp_path / "path-152x2-remedis-s")) == 224
  assert embed.default_image_size(str(tmp_path / "anything")) == 224
  (tmp_path / "mine" / "assets").mkdir(parents=True)
  meta = metadata.metadata_for("mine", 2048, pretrain_image_size=320)
  (tmp_path / "mine" / "assets" / metadata.METADATA_FILENAME).write_text(meta.to_json())
  assert embed.default_image_size(str(tmp_path / "mine")) == 320
