"""The front doors: the Streamlit dashboard and the ``approximant`` command line."""
