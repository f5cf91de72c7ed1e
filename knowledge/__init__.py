"""Knowledge files (one TOML per catalogue slug); installed as the data package virtdoctor.knowledge_data."""
