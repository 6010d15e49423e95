-- Where an appliance's `launched`, `expiring` and `stopped` events are mailed. The mails
-- are deliveries like webhooks (queued with the event, retried), to `mailto:` URLs.
ALTER TABLE appliances ADD COLUMN notify_email TEXT;
