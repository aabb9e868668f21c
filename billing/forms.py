from django import forms
from django.contrib.auth.forms import AuthenticationForm, UsernameField


class ApiKeyCreateForm(forms.Form):
    label = forms.CharField(
        max_length=100,
        required=False,
        help_text="What the key is for, e.g. “billing-agent prod”. Shown in this list only.",
    )


class AccountSwitchForm(forms.Form):
    account_id = forms.IntegerField(min_value=1)
    next = forms.CharField(required=False, max_length=500)


class EmailAuthenticationForm(AuthenticationForm):
    """Operators log in with their email address (stored as the username, lower-cased)."""

    username = UsernameField(label="Email", widget=forms.EmailInput(attrs={"autofocus": True, "autocomplete": "email"}))

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "Please enter a correct email and password. The password is case-sensitive.",
    }

    def clean_username(self) -> str:
        return self.cleaned_data["username"].strip().lower()
