"""The storage service. The run storage exchange: input provisioning and validation, reading inputs and
outputs, output collection; blob backends.
"""
