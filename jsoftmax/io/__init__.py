"""Files: loaders of training data (``data``: CSV, NPZ, NPY, LIBSVM, IDX, scikit-learn's
bundled datasets), atomic code-free ``.npz`` storage for models and checkpoints (``files``),
and the model file format (``model_files``). Never imports the estimators or the CLI."""
