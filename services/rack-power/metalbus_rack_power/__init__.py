"""rack-power: BMC control over IPMI, Redfish or manual (drivers land with their own issue)."""
