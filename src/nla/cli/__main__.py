"""``python -m nla.cli`` (used by accelerate launch / torchrun)."""

from nla.cli import main

raise SystemExit(main())
