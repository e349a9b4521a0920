"""Slides -> remedis-tile -> pathology pretraining -> fine-tuning on slide labels -> evaluation.

The CLI defaults are 224 px patches at 0.5 um/px; here patches are 64 px at
1.0 um/px and the encoder is bit-tiny, so the whole chain runs in about a
minute on a CPU. It checks that the trainers read the tiled records unchanged
(schema, labels, manifest) and that predictions line up with the patches.
"""

import json

import numpy as np
import pytest
import slide_testdata as td

from remedis_tf.data.input_pipeline import make_supervised_dataset
from remedis_tf.train.evaluate import EvaluateConfig, evaluate
from remedis_tf.train.finetune import FinetuneConfig, finetune
from remedis_tf.train.pretrain import PretrainConfig, pretrain
from tfrecords_tools import tile, tiling

TINY = dict(encoder="bit-tiny", image_size=64, global_batch_size=8)


@pytest.mark.slow
@pytest.mark.integration
def test_pretrain_finetune_evaluate_on_tiled_slides(tmp_path):
  src = tmp_path / "slides"
  src.mkdir()
  rows = ["slide_id,patient_id,diagnosis"]
  for i in range(4):
    slide = td.make_slide(width=1024, height=768, num_levels=3, seed=10 + i)
    td.write_generic_tiff(str(src / f"slide_{i}.tif"), slide)
    rows.append(f"slide_{i},P{i},{'tumor' if i % 2 else 'normal'}")
  (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
  records = tmp_path / "records"
  manifest = tile.tile(
    tile.TileConfig(
      input_path=str(src),
      output_dir=str(records),
      policy=tiling.PatchPolicy(patch_size=64, target_mpp=1.0, min_tissue_fraction=0.3),
      labels_csv=str(tmp_path / "labels.csv"),
      salt="e2e",
      split_fractions=(1.0, 0.0, 0.0),
    )
  )
  n = manifest["counts"]["records"]
  assert manifest["counts"]["slides_tiled"] == 4 and n >= 16
  assert manifest["counts"]["records_by_split_and_label"]["train"].keys() == {"normal", "tumor"}
  data = str(records / "*.tfrecord")

  # The supervised reader takes labels and label names from the records and manifest.
  batch = next(iter(make_supervised_dataset(data, batch_size=4, image_size=64, training=False)))
  images, labels = batch[0], batch[1]
  assert images.shape == (4, 64, 64, 3) and float(images.numpy().max()) <= 1.0
  assert set(labels.numpy().tolist()) <= {0, 1}

  pre = pretrain(
    PretrainConfig(
      train_data=data,
      model_dir=str(tmp_path / "pre"),
      train_steps=2,
      augment_preset="pathology",
      image_summaries=False,
      **TINY,
    )
  )
  assert pre["final_step"] == 2
  ft = finetune(
    FinetuneConfig(
      train_data=data,
      model_dir=str(tmp_path / "ft"),
      init_from=str(tmp_path / "pre"),
      train_steps=2,
      augment_preset="pathology",
      **TINY,
    )
  )
  assert ft["label_mode"] in ("multi_class", "multiclass")  # the spelling is being unified
  assert ft["num_classes"] == 2 and ft["final_step"] == 2
  result = evaluate(
    EvaluateConfig(
      data=data,
      model_dir=str(tmp_path / "ft"),
      output_json=str(tmp_path / "eval.json"),
      predictions_npz=str(tmp_path / "pred.npz"),
      num_bootstrap=50,
    )
  )
  predictions = np.load(tmp_path / "pred.npz")
  assert result["n_examples"] == n and result["n_patients"] == 4
  assert predictions["probabilities"].shape == (n, 2)
  np.testing.assert_allclose(predictions["probabilities"].sum(axis=1), 1.0, atol=1e-5)
  assert json.loads((tmp_path / "eval.json").read_text())["n_examples"] == n
