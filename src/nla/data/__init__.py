"""Data in and out of the pipeline: documents and corpora (``documents``, ``corpus``, the offline default
corpus ``corpus_default``), extraction of activations (``extract``) and the activation dataset
(``activations``, the one parquet reader).
"""
