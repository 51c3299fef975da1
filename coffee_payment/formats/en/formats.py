# T: the zone's abbreviation ("MSK", "UTC"), or its offset where it has none ("+05").
DATETIME_FORMAT = "Y-m-d H:i T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i T"
