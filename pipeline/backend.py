"""TensorFlow and Keras 3, loaded quietly: every module that computes imports them from here
(`from pipeline.backend import keras, tf`), so TensorFlow's start-up lines are filtered
(`startup.quiet_tensorflow_start`) and a command that never computes (`compare`, `split`,
any `--help`) never loads TensorFlow at all.
"""

from pipeline.startup import quiet_tensorflow_start

quiet_tensorflow_start()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

__all__ = ["keras", "tf"]
