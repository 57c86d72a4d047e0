"""The ``mscn-geo`` command line (installed as the ``mscn_geo_cli`` package)."""
