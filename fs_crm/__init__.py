"""fs-crm: a bridge between a FreeSWITCH PBX and retailCRM."""

__version__ = "0.1.0"
