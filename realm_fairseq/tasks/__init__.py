"""fairseq tasks of the plugin: realm_ict, realm_pretrain (and, as it lands, realm_open_qa)."""
