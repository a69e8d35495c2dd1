"""fairseq criterions of the plugin: realm_ict, realm_mlm (and, as it lands, realm_qa)."""
