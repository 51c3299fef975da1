# T: the zone's abbreviation ("MSK", "UTC"), or its offset where it has none ("+05").
DATETIME_FORMAT = "d.m.Y H:i T"
SHORT_DATETIME_FORMAT = "d.m.Y H:i T"
