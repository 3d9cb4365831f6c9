"""The registry service. Task bundles: upload, validation, the task catalogue, descriptors, logos and
image blobs; publishes task.* events.
"""
