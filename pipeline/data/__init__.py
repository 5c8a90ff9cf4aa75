"""The data, without TensorFlow: where the images come from (`sources`), reading one image as every
stage does (`images`), the split (`partition`, the algorithm; `manifests`, its files and the `Split`
value every stage reads) and what is kept on disk and proven before it is served (`cache`)."""
