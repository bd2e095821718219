"""Beyond one machine: pushing a set's images to a registry and describing the service for Kubernetes."""
