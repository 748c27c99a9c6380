"""rack-power: BMC control over IPMI, Redfish or manual, served per rack, with power-state polling."""
