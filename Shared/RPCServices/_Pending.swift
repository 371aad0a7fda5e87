// generated code lands here (proto/generate.sh)
