"""The gateway's Cloud Signature Consortium API v2 endpoint: registered applications ask for
signatures with an organisation key, the user approves each on the phone by co-signing its
service record, and the signatures are made through the ordinary checked use."""
