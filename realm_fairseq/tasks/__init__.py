"""fairseq tasks of the plugin: realm_ict (and, as they land, realm_pretrain and realm_open_qa)."""
