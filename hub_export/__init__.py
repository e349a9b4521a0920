"""Export remedis-tf encoders as TF-Hub SavedModels (PhysioNet format) and load them back.

  export_encoder(model, export_dir, metadata=None)   Keras encoder -> SavedModel
  load_for_finetuning(path, num_classes=None, ...)   SavedModel -> Keras 3 model
  load_encoder(path, ...)                            SavedModel -> Keras 3 encoder
  SavedModelEncoder                                  the Keras 3 layer behind both
  embed_dataset(model_path, data, output, ...)       pooled embeddings of TFRecords

CLIs: remedis-export (hub_export.export_main), remedis-embed (hub_export.embed_main).
"""

import importlib
from typing import Any

# Imported on first use (PEP 562), so that `import hub_export.export_main`
# runs remedis_tf.cpu_setup before TensorFlow is imported.
_EXPORTS = {
  "ExportMetadata": "hub_export.metadata",
  "SavedModelEncoder": "hub_export.load",
  "embed_dataset": "hub_export.embed",
  "export_encoder": "hub_export.export",
  "export_onnx": "hub_export.onnx_export",
  "load_encoder": "hub_export.load",
  "load_for_finetuning": "hub_export.load",
  "metadata_for": "hub_export.metadata",
  "parse_release_name": "hub_export.metadata",
}


def __getattr__(name: str) -> Any:
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'hub_export' has no attribute {name!r}")


__all__ = [
  "ExportMetadata",
  "SavedModelEncoder",
  "embed_dataset",
  "export_encoder",
  "export_onnx",
  "load_encoder",
  "load_for_finetuning",
  "metadata_for",
  "parse_release_name",
]
