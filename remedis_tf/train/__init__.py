"""Training, fine-tuning and evaluation under tf.distribute.

Library entry points (config in, results dict out; no flags):
  * `remedis_tf.train.pretrain.pretrain(PretrainConfig)`
  * `remedis_tf.train.finetune.finetune(FinetuneConfig)`
  * `remedis_tf.train.evaluate.evaluate(EvaluateConfig)`

Submodules are imported on demand, so `evaluation_metrics` stays usable
without TensorFlow.
"""
