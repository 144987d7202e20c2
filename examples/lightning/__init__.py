"""Lightning example: the SUPPORT2 MLP of ``examples.ehr`` trained with a Trainer that
audits it with `PrivacyAuditCallback`."""
