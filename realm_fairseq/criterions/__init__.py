"""fairseq criterions of the plugin: realm_ict (and, as they land, realm_mlm and realm_qa)."""
