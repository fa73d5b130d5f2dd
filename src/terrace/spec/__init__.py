"""Reading the files users write: landscapes (ci.yml) and providers (provider.yml)."""
