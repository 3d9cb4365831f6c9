"""The task descriptor (``descriptor.yml``): a contract every service reads.

The registry validates it on upload; storage validates input and output values against its
parameter types; the scheduler and executor read resources, folders and time limits. The
model lives here because services never import each other.
"""
