"""location: addresses of persons and care sites, referenced by the rules' ``location`` column."""

from fedomop.harmonize.tables._target import TableTarget

TARGET = TableTarget(table="location", columns={"_source_key": "location_source_value"}, required_rule_keys=("id",))
