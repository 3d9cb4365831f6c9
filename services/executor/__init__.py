"""The executor service. Runs task containers on a Docker engine: image loading, limits, input/output
transfer, exit codes, logs, recovery.
"""
