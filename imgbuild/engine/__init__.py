"""Container engines: connecting to Docker Engine or Podman, finding images and their labels, image ids across
image stores. Used by every stage that talks to an engine."""
