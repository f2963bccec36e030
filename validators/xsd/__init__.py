"""Packaged XSD files (data only; a package so that setuptools ships the *.xsd files)."""
