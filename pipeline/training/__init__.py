"""Training one model: devices and strategies (`devices`), tf.data pipelines (`pipelines`), the frozen
part's outputs and augmented views (`frozen_features`), resumable checkpoints (`checkpoints`), an
epoch's lines for logs (`epoch_lines`) and the fit itself (`fitting`)."""
