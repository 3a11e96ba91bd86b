"""The ml-api Pulumi program, one ComponentResource per concern; `program.build` wires them."""
