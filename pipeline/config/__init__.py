"""The configuration: the typed schema (`schema`, `augmentation`, `compare`), composing and
validating it (`compose`), the command line of every stage (`cli`), a sweep's jobs (`sweeps`) and
the reference written from the schema (`comments`, `reference`)."""
