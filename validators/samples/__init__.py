"""Sample documents for the packaged schemas (data only; a package so setuptools ships them)."""
