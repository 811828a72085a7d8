"""Looking at results: store views (status, show, log, cache), the analysis API, graphs, and
the Makefile export. Everything here reads the lab and the store; nothing runs a job.
"""
