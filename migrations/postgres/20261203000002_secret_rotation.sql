-- Secret rotation: the previous secret keeps signing beside the new one until it expires.
ALTER TABLE webhooks ADD COLUMN previous_secret TEXT;             -- sealed, like `secret`
ALTER TABLE webhooks ADD COLUMN previous_secret_expires_at BIGINT;
