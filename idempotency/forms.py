from django import forms


class KeyLookupForm(forms.Form):
    key = forms.CharField(
        max_length=256,
        strip=False,
        label="Key",
        help_text="A check-lock key or a lease key, exactly as the agent sends it.",
    )

    def clean_key(self) -> str:
        key = self.cleaned_data["key"]
        if not key.strip():
            raise forms.ValidationError("Enter a key.")
        return key


class OperatorResetForm(forms.Form):
    """Release a lock or reset a lease: the reason is required and goes into the audit log."""

    key = forms.CharField(max_length=256, strip=False, widget=forms.HiddenInput)
    reason = forms.CharField(
        max_length=500,
        label="Reason (recorded in the audit log)",
        error_messages={"required": "Say why: the reason is kept in the audit log."},
    )

    def clean_reason(self) -> str:
        reason = self.cleaned_data["reason"].strip()
        if not reason:
            raise forms.ValidationError("Say why: the reason is kept in the audit log.")
        return reason


class RunTimelineForm(forms.Form):
    run_id = forms.CharField(max_length=256, strip=False, label="Run id")

    def clean_run_id(self) -> str:
        run_id = self.cleaned_data["run_id"].strip()
        if not run_id:
            raise forms.ValidationError("Enter a run id.")
        return run_id
