"""The OCI distribution client behind :class:`containerdisk.RegistryClient`."""
