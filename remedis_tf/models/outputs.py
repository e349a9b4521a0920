"""Keys of the output dicts that every encoder and head returns.

Encoders map float32 images (N, H, W, 3) in [0, 1] to
{FEATURE_MAP: (N, h, w, C), EMBEDDING: (N, C)}; a classifier adds LOGITS
(N, K). Projection heads return PROJECTION and FINETUNE_FEATURES. Exported
SavedModels use the same names for their signature outputs.
"""

FEATURE_MAP = "feature_map"
EMBEDDING = "embedding"
LOGITS = "logits"
PROBABILITIES = "probabilities"
PROJECTION = "projection"
FINETUNE_FEATURES = "finetune_features"
