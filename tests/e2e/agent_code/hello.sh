#!/bin/sh
echo agent-code-e2e ran
