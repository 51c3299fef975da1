"""Date formats of the admin, per language (FORMAT_MODULE_PATH): short, and every time with its zone
("07.12.2026 14:05 MSK"), shown in the machine's zone on its pages (payments/admin_mixins.py)."""
