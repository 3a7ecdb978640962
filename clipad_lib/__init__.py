"""clipad_lib: the library behind the clipad notebooks.

Rooms: ``data`` (manifests, readers, synthetic dataset, k-shot), ``backbones`` (frozen CLIP),
``methods`` (one module per method, fit/predict), ``engine`` (loops), ``metrics``, ``results``
(run records, tables), ``viz``, ``papers`` (reported numbers), ``runner``/``cli`` (papermill).
"""
__version__ = "0.1.0"
